"""Private files and directories: what the node creates belongs to its user alone.

Every file the node creates (segments, indexes, checkpoints, the coordinator's state,
the data-directory lock, the status table) is made with mode 0600 and every directory
with 0700, whatever the process's umask: the mode is passed explicitly on creation
(``open_private``, ``make_private_dir``). ``sluice serve`` also sets its umask to 0077,
which covers what a library creates for us (prometheus_client's metric files).

The runtime directory is different: its default path (``/dev/shm/sluice-<uid>-<h>``) is
predictable, so another local user could create it first and keep it. It is never
adopted. ``ensure_private_dir`` creates it with 0700, or accepts an existing one only
when a descriptor opened on it with ``O_NOFOLLOW`` shows a directory (not a symbolic
link) that belongs to this process's user and gives no one else any access, and when
no other user can rename it or swap it for another (every parent belongs to root or to
this user, and one writable by others has the sticky bit, as ``/dev/shm`` does). A
directory that fails is refused with ``NotPrivateError``, which names it, says what is
wrong and what to do. One exception, for upgrades: a directory of our own that others
may read but not write (0755, as earlier releases made it under umask 022) is narrowed
to 0700, as nobody else can have put anything in it.

The same check, for a socket, is ``check_own_socket``: a worker runs it on the control
socket before connecting, so it never talks to a socket someone else bound.
"""

from __future__ import annotations

import errno
import logging
import os
import stat

from ipc.errors import InvalidConfigError

log = logging.getLogger(__name__)

FILE_MODE = 0o600
DIR_MODE = 0o700
_OTHERS = 0o077  # any access for the group or others
_OTHERS_WRITE = 0o022


class NotPrivateError(InvalidConfigError):
    """A path the node must own alone belongs to someone else, is a symbolic link, or
    can be reached or replaced by other users."""


def open_private(path: str, flags: int) -> int:
    """``os.open`` whose file, if it creates one, has mode 0600 (never more, whatever
    the umask). The descriptor is close-on-exec."""
    return os.open(path, flags | os.O_CLOEXEC, FILE_MODE)


def make_private_dir(path: str) -> None:
    """Create ``path`` (and missing parents) with mode 0700. An existing directory that
    belongs to this user and lets others in (made by an earlier release under umask
    022) is narrowed to 0700; one of another user is left as it is."""
    os.makedirs(path, mode=DIR_MODE, exist_ok=True)
    st = os.stat(path)
    if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) & _OTHERS:
        log.info("narrowing the mode of %s from %04o to %04o", path, stat.S_IMODE(st.st_mode), DIR_MODE)
        os.chmod(path, DIR_MODE)


def _describe(st: os.stat_result) -> str:
    return f"owner uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o}"


def _refuse(what: str, path: str, problem: str) -> NotPrivateError:
    return NotPrivateError(
        f"{what} {path!r} {problem}; it must be a directory of uid {os.geteuid()} (this node's user) "
        "with mode 0700 that no other user can replace. Remove it (made by someone else, it may be an "
        "attack), or set runtime_dir to a directory only this user can reach"
    )


def _check_parents(path: str, what: str) -> None:
    """No one but root and this user can rename ``path`` away or put another in its place."""
    me = os.geteuid()
    parent = os.path.dirname(os.path.realpath(path))
    for _ in range(256):  # bounded: a path has far fewer components
        st = os.stat(parent)
        mode = stat.S_IMODE(st.st_mode)
        if st.st_uid not in (0, me):
            raise _refuse(what, path, f"is inside {parent}, which belongs to another user ({_describe(st)})")
        if mode & _OTHERS_WRITE and not mode & stat.S_ISVTX:
            raise _refuse(
                what, path, f"is inside {parent}, which other users can write ({_describe(st)}, no sticky bit)"
            )
        up = os.path.dirname(parent)
        if up == parent:
            return
        parent = up


def ensure_private_dir(path: str, what: str = "runtime_dir") -> None:
    """Create ``path`` with mode 0700, or accept it only if it is already ours alone
    (see the module docstring); ``NotPrivateError`` otherwise. ``what`` names it in the
    error (the option, or the option and the subdirectory)."""
    parent = os.path.dirname(os.path.abspath(path))
    try:
        if not os.path.isdir(parent):
            ensure_private_dir(parent, what)
        _check_parents(path, what)
        created = True
        try:
            os.mkdir(path, DIR_MODE)
        except FileExistsError:
            created = False
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            if os.path.islink(path):
                raise _refuse(what, path, f"is a symbolic link (to {os.readlink(path)!r})") from None
            if exc.errno == errno.ENOTDIR:
                raise _refuse(what, path, "is not a directory") from None
            raise
        try:
            st = os.fstat(fd)
            mode = stat.S_IMODE(st.st_mode)
            if st.st_uid != os.geteuid():
                raise _refuse(what, path, f"belongs to another user ({_describe(st)})")
            if mode & _OTHERS_WRITE:
                raise _refuse(what, path, f"can be written by other users ({_describe(st)})")
            if mode != DIR_MODE:
                if not created:
                    log.info("narrowing the mode of %s from %04o to %04o", path, mode, DIR_MODE)
                os.fchmod(fd, DIR_MODE)  # ours, and no one else could write in it
        finally:
            os.close(fd)
    except OSError as exc:
        raise NotPrivateError(f"{what} {path!r} is not usable: {exc.strerror}") from None


def check_own_socket(path: str) -> None:
    """``path`` is a Unix socket (not a symbolic link) of this process's user, in a
    directory no one else can reach; ``NotPrivateError`` otherwise."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise NotPrivateError(f"control socket {path!r} is not usable: {exc.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        raise NotPrivateError(f"control socket {path!r} is a symbolic link: refusing to connect")
    if not stat.S_ISSOCK(st.st_mode):
        raise NotPrivateError(f"control socket {path!r} is not a socket: refusing to connect")
    if st.st_uid != os.geteuid():
        raise NotPrivateError(
            f"control socket {path!r} belongs to uid {st.st_uid}, not to this node's user "
            f"(uid {os.geteuid()}): refusing to connect"
        )
    directory = os.stat(os.path.dirname(os.path.abspath(path)))
    if directory.st_uid != os.geteuid() or stat.S_IMODE(directory.st_mode) & _OTHERS:
        raise NotPrivateError(
            f"control socket {path!r} is in a directory others can reach ({_describe(directory)}): refusing to connect"
        )
