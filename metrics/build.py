"""``sluice_build_info{version, commit}``: which Sluice a node runs.

The version is the installed package's (``importlib.metadata``). The commit is, in
order: ``<sys.prefix>/share/sluice/commit`` (written by ``make install`` into the
service's virtualenv), else the checkout this module runs from (``.git/HEAD`` read as a
file: no ``git`` process is forked from the supervisor), else ``unknown``. Both are read
once, when the exporter starts.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import sys
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

UNKNOWN = "unknown"
_SHA = re.compile(r"[0-9a-f]{40}")


def version() -> str:
    try:
        return importlib.metadata.version("sluice")
    except importlib.metadata.PackageNotFoundError:
        return UNKNOWN


def commit(prefix: str = sys.prefix, source: str | None = None) -> str:
    """The commit this build came from (see the module docstring)."""
    try:
        with open(os.path.join(prefix, "share", "sluice", "commit")) as f:
            sha = f.read().strip()
        if _SHA.fullmatch(sha):
            return sha
    except OSError:
        pass
    repo = source if source is not None else os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return _git_head(os.path.join(repo, ".git")) or UNKNOWN


def _git_head(git_dir: str) -> str | None:
    try:
        with open(os.path.join(git_dir, "HEAD")) as f:
            head = f.read().strip()
        if _SHA.fullmatch(head):
            return head  # detached
        if not head.startswith("ref: "):
            return None
        ref = head[5:]
        try:
            with open(os.path.join(git_dir, ref)) as f:
                sha = f.read().strip()
            return sha if _SHA.fullmatch(sha) else None
        except FileNotFoundError:
            with open(os.path.join(git_dir, "packed-refs")) as f:
                for line in f:
                    parts = line.split()
                    if len(parts) == 2 and parts[1] == ref and _SHA.fullmatch(parts[0]):
                        return parts[0]
    except OSError:
        return None
    return None


class BuildInfo(Collector):
    def __init__(self) -> None:
        self.labels = [version(), commit()]

    def collect(self) -> Iterator[Metric]:
        g = GaugeMetricFamily(
            "sluice_build_info", "Always 1: the running Sluice's version and commit.", labels=["version", "commit"]
        )
        g.add_metric(self.labels, 1.0)
        yield g
