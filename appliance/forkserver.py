"""The node's two multiprocessing helpers, the fork server and the resource tracker:
started first thing, stopped as part of a clean stop.

``start`` starts ``multiprocessing``'s fork server (which starts the resource tracker
first) before the supervisor has any thread or socket (../shared/pitfalls.md item 3),
with the worker module preloaded, then ``forkserver_title`` (which titles it
``sluice: fork server``) and, last, ``forkserver_freeze`` (which ``gc.freeze()``s
everything imported so far, so forked workers keep those pages shared). Its listening
socket goes in ``<runtime_dir>/mp/`` rather than a ``/tmp/pymp-*`` directory: a SIGKILLed supervisor never runs the
``atexit`` hook that removes the latter, whereas the runtime directory is removed at a
clean stop and swept once its node is dead (``appliance/rundir.py``). A runtime
directory whose path is too long for a Unix socket (``sun_path``: 107 bytes) keeps the
default.

``stop`` ends both, in order, once every child has exited: close our end of the fork
server's "alive" pipe (every child closed its copy at start:
``appliance/partition/process.py``), wait for it to exit, then close our end of the
tracker's pipe and wait for it. Both exit by themselves on EOF; without this they
outlive the supervisor by a moment, and under systemd (``KillMode=mixed``) whatever is
left when the main process exits gets SIGKILL. Each wait is bounded; a helper that does
not exit in time is left to the kernel (it gets EOF when we exit) and logged.

Both use ``multiprocessing``'s private attributes (``_forkserver``,
``_resource_tracker``, the process's ``_config['tempdir']``), as Python 3.11 offers no
public way to do either; each use checks that the attribute is there and does nothing
otherwise.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.forkserver
import multiprocessing.process
import multiprocessing.resource_tracker
import os
import select
from multiprocessing.context import BaseContext

from ipc.private import ensure_private_dir

log = logging.getLogger(__name__)

MP_DIR = "mp"  # <runtime_dir>/mp: the fork server's socket
SUN_PATH_MAX = 107
_SOCKET_NAME_LEN = len("/listener-") + 8  # multiprocessing.connection.arbitrary_address
STOP_TIMEOUT_S = 5.0
TITLE_MODULE = "appliance.forkserver_title"  # preloaded: titles the fork server "sluice: fork server"
FREEZE_MODULE = "appliance.forkserver_freeze"  # preloaded last: gc.freeze() what the others built


def start(runtime_dir: str, preload: list[str]) -> BaseContext:
    """Start the fork server (and the resource tracker) with its socket in the runtime
    directory; returns the ``forkserver`` multiprocessing context."""
    mp = multiprocessing.get_context("forkserver")
    mp.set_forkserver_preload([*preload, TITLE_MODULE, FREEZE_MODULE])
    mp_dir = os.path.join(runtime_dir, MP_DIR)
    config = getattr(multiprocessing.process.current_process(), "_config", None)
    if len(mp_dir) + _SOCKET_NAME_LEN <= SUN_PATH_MAX and isinstance(config, dict) and not config.get("tempdir"):
        ensure_private_dir(mp_dir, "runtime_dir (mp/)")
        config["tempdir"] = mp_dir  # multiprocessing.util.get_temp_dir() uses it as it is
    multiprocessing.forkserver.ensure_running()
    return mp


def stop(timeout_s: float = STOP_TIMEOUT_S) -> bool:
    """Stop the fork server, then the resource tracker; True if both exited in time."""
    ok = True
    server = getattr(multiprocessing.forkserver, "_forkserver", None)
    pid = getattr(server, "_forkserver_pid", None)
    fd = getattr(server, "_forkserver_alive_fd", None)
    if isinstance(pid, int) and isinstance(fd, int):
        os.close(fd)
        server._forkserver_alive_fd = None  # type: ignore[union-attr]
        ok = _wait_exit(pid, timeout_s, "the fork server") and ok
        server._forkserver_pid = None  # type: ignore[union-attr]
        address = getattr(server, "_forkserver_address", None)
        if isinstance(address, str) and not address.startswith("\0"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(address)
        server._forkserver_address = None  # type: ignore[union-attr]
    tracker = getattr(multiprocessing.resource_tracker, "_resource_tracker", None)
    pid = getattr(tracker, "_pid", None)
    fd = getattr(tracker, "_fd", None)
    if isinstance(pid, int) and isinstance(fd, int):
        os.close(fd)
        tracker._fd = None  # type: ignore[union-attr]
        ok = _wait_exit(pid, timeout_s, "the resource tracker") and ok
        tracker._pid = None  # type: ignore[union-attr]
    return ok


def _wait_exit(pid: int, timeout_s: float, what: str) -> bool:
    """Wait up to ``timeout_s`` for our child ``pid`` to exit, and reap it."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        pidfd = -1
    except OSError:  # no pidfd (an old kernel): a blocking wait, as multiprocessing does
        pidfd = -1
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        return True
    try:
        if pidfd >= 0 and not select.select([pidfd], [], [], timeout_s)[0]:
            log.warning("%s (pid %d) did not exit within %.0f s; leaving it", what, pid, timeout_s)
            return False
    finally:
        if pidfd >= 0:
            os.close(pidfd)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
    log.debug("%s (pid %d) exited", what, pid)
    return True
