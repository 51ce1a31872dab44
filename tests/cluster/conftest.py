"""Fixtures for multi-node tests: a network-namespace bed with ZooKeeper (once per module)
and a fresh three-node cluster on it (once per test). See harness.py.

Needs root (network namespaces). Without root the tests are skipped; as root, a missing
``ip`` or ZooKeeper is an error that names what to install (.ci/system-deps).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.harness import Cluster, ClusterBed


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("cluster tests need root: they create network namespaces, veths and a bridge")


@pytest.fixture(scope="module")
def cluster_bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterBed]:
    """Three namespaces on a bridge, ZooKeeper on the bridge address; for the whole module."""
    require_root()
    bed = ClusterBed(tmp_path_factory.mktemp("cluster-bed")).start()
    try:
        yield bed
    finally:
        bed.close()


@pytest.fixture
def cluster_factory(cluster_bed: ClusterBed, tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    """``make(options=None, start=True)``: a cluster with extra node options (one per test at
    a time: the namespaces and the port are shared). Killed, healed and its logs printed at
    teardown (pytest shows them when the test failed)."""
    made: list[Cluster] = []

    def make(options: Mapping[str, Any] | None = None, start: bool = True) -> Cluster:
        for c in made:  # one cluster at a time owns the namespaces
            c.close()
        c = Cluster(cluster_bed, tmp_path / f"cluster-{len(made)}", options)
        made.append(c)
        return c.start() if start else c

    try:
        yield make
    finally:
        for c in made:
            try:
                c.close()
            finally:
                print(c.logs())


@pytest.fixture
def cluster(cluster_factory: Callable[..., Cluster]) -> Cluster:
    """Three started nodes (``node_id`` 0, 1, 2) coordinated through ZooKeeper."""
    return cluster_factory()
