"""Helpers for the connector tests: a node whose configuration declares connectors, and
reading the node's connector status (what ``sluice connect status`` reads)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from appliance.config import resolve_runtime_dir
from tests.integration.conftest import SLUICE, Node, wait_until


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return json.dumps(str(v))


def declare(node: Node, name: str, cls: str, **options: Any) -> None:
    """Add a ``[[connectors]]`` table to the node's configuration file (before start)."""
    lines = ["", "[[connectors]]", f"name = {toml_value(name)}", f"class = {toml_value(cls)}", "[connectors.options]"]
    lines += [f"{json.dumps(k)} = {toml_value(v)}" for k, v in options.items()]
    with open(node.config_path, "a") as f:
        f.write("\n".join(lines) + "\n")


def connect_status(node: Node) -> dict[str, dict[str, Any]]:
    path = os.path.join(resolve_runtime_dir("", str(node.data_dir)), "connect", "status.json")
    try:
        with open(path) as f:
            doc = json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return {c["name"]: c for c in doc["connectors"]}


def wait_connector(
    node: Node, name: str, pred: Callable[[dict[str, Any]], bool], what: str, timeout: float = 30.0
) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        c = connect_status(node).get(name)
        if c is not None and c["pid"]:
            node.known_pids.add(int(c["pid"]))
        return c if c is not None and pred(c) else None

    try:
        return wait_until(check, timeout, f"connector {name}: {what}")  # type: ignore[no-any-return]
    except AssertionError:
        raise AssertionError(f"{what}: {connect_status(node).get(name)}\n{node.log_tail()}") from None


def cli(node: Node, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    out = subprocess.run(
        [*SLUICE, "connect", *args, "--config", str(node.config_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    if check and out.returncode != 0:
        raise AssertionError(f"sluice connect {' '.join(args)}: exit {out.returncode}: {out.stderr}")
    return out
