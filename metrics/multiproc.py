"""PROMETHEUS_MULTIPROC_DIR: prepared before anything imports prometheus_client.

prometheus_client reads the variable once, at import (pitfalls.md 2), so this module
imports nothing of it; ``sluice serve`` calls ``prepare`` first thing.

``prepare`` is also where the runtime directory is first touched, so it is checked
here (``ipc.private.ensure_private_dir``: created 0700, or refused if it belongs to
someone else or others can write it), and so is ``prometheus/`` inside it: a symbolic
link or a directory that is not this user's alone is refused, never wiped or written
through. prometheus_client creates the metric files itself (with the umask's mode:
``sluice serve`` sets 0077); the 0700 directory keeps them private either way.
"""

from __future__ import annotations

import os
import shutil

from ipc.private import ensure_private_dir

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
SUBDIR = "prometheus"


def prepare(runtime_dir: str) -> str:
    """Point PROMETHEUS_MULTIPROC_DIR at a fresh (wiped) ``<runtime_dir>/prometheus``;
    ``NotPrivateError`` (nothing written) if either directory is not this user's alone."""
    ensure_private_dir(runtime_dir, "runtime_dir")
    path = os.path.join(runtime_dir, SUBDIR)
    if os.path.lexists(path):
        ensure_private_dir(path, f"runtime_dir's {SUBDIR}/")  # checked before anything in it is removed
        shutil.rmtree(path)
    ensure_private_dir(path, f"runtime_dir's {SUBDIR}/")
    os.environ[MULTIPROC_ENV] = path
    return path
