"""PROMETHEUS_MULTIPROC_DIR: prepared before anything imports prometheus_client.

prometheus_client reads the variable once, at import (pitfalls.md 2), so this module
imports nothing of it; ``sluice serve`` calls ``prepare`` first thing.
"""

from __future__ import annotations

import os
import shutil

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare(runtime_dir: str) -> str:
    """Point PROMETHEUS_MULTIPROC_DIR at a fresh (wiped) ``<runtime_dir>/prometheus``."""
    os.makedirs(runtime_dir, mode=0o700, exist_ok=True)
    path = os.path.join(runtime_dir, "prometheus")
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.environ[MULTIPROC_ENV] = path
    return path
