"""Session-wide: the run leaves nothing behind.

Every test cleans up what it creates. This checks it, for the two kinds of leftover
that piled up before (issue 19): the fork server's ``pymp-*`` directories and the
nodes' runtime directories in ``/dev/shm``.

- Processes the tests start get ``TMPDIR`` pointed at a fresh directory of this session
  (this process keeps its own, so pytest's ``tmp_path`` is unaffected). Anything a
  process leaves there is the run's: ``pymp-*`` directories fail the run, other files
  are reported; the directory is removed at the end either way.
- A runtime directory in ``/dev/shm`` whose lock file (``appliance/rundir.py``) names a
  data directory under this session's base temporary directory was made by this run's
  nodes: one still there at the end fails the run, and is removed.
- ``/tmp/pymp-*`` directories of this user made during the run are reported (other runs
  on the same host may make them too, so they cannot fail this one).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from appliance import rundir

_STATE: dict[str, Any] = {}


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):  # an xdist worker: the controller checks
        return
    tempfile.gettempdir()  # cached for this process (pytest's tmp_path) before TMPDIR changes
    session_tmp = tempfile.mkdtemp(prefix="sluice-test-tmp-")
    _STATE.update(tmp=session_tmp, started=time.time(), old_tmpdir=os.environ.get("TMPDIR"))
    os.environ["TMPDIR"] = session_tmp


def _ours_in_shm(basetemp: Path) -> list[str]:
    out = []
    base = str(basetemp.resolve())
    try:
        names = os.listdir(rundir.SHM_DIR)
    except OSError:
        return out
    for name in sorted(names):
        if rundir.default_name_uid(name) != os.geteuid():
            continue
        path = os.path.join(rundir.SHM_DIR, name)
        holder = rundir.lock_holder(path)
        if holder is not None and (holder[1] == base or holder[1].startswith(base + os.sep)):
            out.append(path)
    return out


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if "tmp" not in _STATE:
        return
    session_tmp = _STATE["tmp"]
    lines: list[str] = []
    failed = False
    leftovers = sorted(os.listdir(session_tmp)) if os.path.isdir(session_tmp) else []
    pymp = [n for n in leftovers if n.startswith("pymp-")]
    if pymp:
        failed = True
        lines.append(f"{len(pymp)} pymp-* directories left in the run's TMPDIR: {', '.join(pymp[:5])}")
    others = [n for n in leftovers if not n.startswith("pymp-")]
    if others:
        lines.append(f"files left in the run's TMPDIR (removed): {', '.join(others[:10])}")
    shutil.rmtree(session_tmp, ignore_errors=True)
    if _STATE["old_tmpdir"] is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = _STATE["old_tmpdir"]
    try:
        basetemp = session.config._tmp_path_factory.getbasetemp()  # type: ignore[attr-defined]
    except (AttributeError, OSError):
        basetemp = None
    if basetemp is not None:
        shm = _ours_in_shm(basetemp)
        if shm:
            failed = True
            lines.append(f"{len(shm)} runtime directories of this run's nodes left in /dev/shm (removed): {shm[:5]}")
            for path in shm:
                shutil.rmtree(path, ignore_errors=True)
    stray = [p for p in Path("/tmp").glob("pymp-*") if _owned_since(p, _STATE["started"])]
    if stray:
        lines.append(f"{len(stray)} /tmp/pymp-* directories made during the run (maybe by another run on this host)")
    _STATE["report"] = lines
    if failed and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _owned_since(path: Path, since: float) -> bool:
    try:
        st = path.lstat()
    except OSError:
        return False
    return st.st_uid == os.geteuid() and st.st_mtime >= since


def pytest_terminal_summary(terminalreporter: Any) -> None:
    lines = _STATE.get("report") or []
    if lines:
        terminalreporter.section("leftovers (tests/conftest.py)")
        for line in lines:
            terminalreporter.write_line(line)
