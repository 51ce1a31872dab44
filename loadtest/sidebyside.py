"""Two trees side by side: W1 (produce), W2 (consume) and W3 (end-to-end latency) with
``sluice perf`` against a node started from each tree, runs alternating between the
trees (ABBA order), medians reported; for "no regression" checks of a change.

    git worktree add /tmp/oldtree <commit before the change>
    git worktree add /tmp/newtree <commit after it>
    .venv/bin/python -m loadtest.sidebyside /tmp/oldtree /tmp/newtree --rounds 5 --e2e-seconds 20

Each tree's own client and node run (``PYTHONPATH`` = the tree), on loopback ports
6491 / 6492, data under ``--work`` (removed first). Run it on a quiet machine: every
process here competes for the same cores.

``--secure-new`` measures what security costs (docs/security.md): give the same tree
twice; the "new" node runs with CURVE keys and the ACL authorizer, and its clients
authenticate as ``User:perf``, allowed by ACLs (not a super user, so every request
goes through the ACL decision)::

    .venv/bin/python -m loadtest.sidebyside . . --secure-new --rounds 5 --e2e-seconds 20
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from typing import Any

METRICS = ("w1", "w2", "p50", "p99", "p99_9")


_secure_env: dict[str, dict[str, str]] = {}  # tree+port -> the client's key variables


def _env(tree: str, port: int = 0) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=tree, **_secure_env.get(f"{tree}:{port}", {}))
    env.pop("SLUICE_BOOTSTRAP", None)
    return env


def _secure(tree: str, port: int, work: str) -> list[str]:
    """Keys for a secured node, its config flags; its clients authenticate as User:perf."""
    keys = os.path.join(work, "keys")
    shutil.rmtree(keys, ignore_errors=True)
    sluice = [sys.executable, "-m", "appliance.cli", "keys", "generate", "--dir", keys]
    for extra in (["--server"], ["--node", "0"], ["perf"], ["admin"]):
        subprocess.run([*sluice, *extra], cwd=tree, env=_env(tree), check=True, capture_output=True)
    authorized = os.path.join(keys, "authorized")
    os.makedirs(authorized)
    for name in ("node-0", "perf", "admin"):
        shutil.copy(os.path.join(keys, f"{name}.key"), authorized)
    config = os.path.join(work, "secure.toml")
    with open(config, "w") as f:
        f.write(
            "[security]\n"
            f'server_key_file = "{keys}/server.key_secret"\nnode_key_file = "{keys}/node-0.key_secret"\n'
            f'authorized_keys_dir = "{authorized}"\nauthorizer = "acl"\nsuper_users = ["User:admin"]\n'
        )
    _secure_env[f"{tree}:{port}"] = {
        "SLUICE_SERVER_KEY": f"{keys}/server.key",
        "SLUICE_SECRET_KEY_FILE": f"{keys}/admin.key_secret",  # for the start check and the ACLs
    }
    return ["--config", config]


def _grant_perf(tree: str, port: int, work: str) -> None:
    """ACLs for User:perf (every topic and group, create and idempotent writes), then
    its clients use its key."""
    bootstrap = ["--bootstrap", f"tcp://127.0.0.1:{port}"]
    acl = [sys.executable, "-m", "appliance.cli", "acls", "add", "--allow-principal", "User:perf", *bootstrap]
    for resource in (["--topic", "*"], ["--group", "*"]):
        subprocess.run([*acl, "--operation", "all", *resource], cwd=tree, env=_env(tree, port), check=True)
    for op in ("create", "idempotent_write", "describe"):
        subprocess.run([*acl, "--operation", op, "--cluster"], cwd=tree, env=_env(tree, port), check=True)
    _secure_env[f"{tree}:{port}"]["SLUICE_SECRET_KEY_FILE"] = os.path.join(work, "keys", "perf.key_secret")


def _start(tree: str, port: int, work: str, name: str, secure: bool = False) -> subprocess.Popen[bytes]:
    data = os.path.join(work, f"data-{name}")
    shutil.rmtree(data, ignore_errors=True)
    extra = _secure(tree, port, work) if secure else []
    with open(os.path.join(work, f"node-{name}.log"), "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "appliance.cli", "serve", "--data-dir", data, "--listen", f"tcp://127.0.0.1:{port}"]
            + ["--metrics-listen", "", "--log-level", "warning", *extra],
            cwd=tree,
            env=_env(tree),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        check = [sys.executable, "-m", "appliance.cli", "topics", "list", "--bootstrap", f"tcp://127.0.0.1:{port}"]
        if subprocess.run(check, cwd=tree, env=_env(tree, port), capture_output=True, timeout=60).returncode == 0:
            if secure:
                _grant_perf(tree, port, work)
            return proc
        time.sleep(0.5)  # polling interval while the node starts
    os.killpg(proc.pid, signal.SIGKILL)
    raise SystemExit(f"the node of {tree} did not start")


def _perf(tree: str, port: int, *args: str) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "appliance.cli", "perf", *args, "--bootstrap", f"tcp://127.0.0.1:{port}", "--json"]
    r = subprocess.run([*cmd, "--quiet"], cwd=tree, env=_env(tree, port), capture_output=True, timeout=900, text=True)
    if r.returncode:
        raise SystemExit(f"{tree}: perf {' '.join(args)} failed: {r.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
    return result


def _round(tree: str, port: int, i: int, e2e_s: int) -> dict[str, float]:
    w1_args = ["--topic", f"w1-{i}", "--partitions", "1", "--records", "1000000", "--record-size", "100"]
    w1 = _perf(tree, port, "produce", *w1_args, "--acks", "1")
    w2 = _perf(tree, port, "consume", "--topic", f"w1-{i}", "--records", "1000000")
    w3_args = ["--topic", f"w3-{i}", "--partitions", "1", "--rate", "20000", "--duration", str(e2e_s)]
    lat = _perf(tree, port, "e2e", *w3_args)["latency_ms"]
    return {
        "w1": w1["records_per_s"],
        "w2": w2["records_per_s"],
        "p50": lat["p50"],
        "p99": lat["p99"],
        "p99_9": lat["p99_9"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadtest.sidebyside", description=__doc__.splitlines()[0])
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--e2e-seconds", type=int, default=20)
    ap.add_argument("--work", default="/tmp/sluice-sidebyside")
    ap.add_argument("--secure-new", action="store_true", help="the new node with CURVE keys and ACLs")
    a = ap.parse_args(argv)
    os.makedirs(a.work, exist_ok=True)
    trees = {"old": (os.path.abspath(a.old), 6491), "new": (os.path.abspath(a.new), 6492)}
    nodes = {
        name: _start(tree, port, a.work, name, secure=a.secure_new and name == "new")
        for name, (tree, port) in trees.items()
    }
    runs: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
    try:
        for i in range(a.rounds):
            for name in ("old", "new") if i % 2 == 0 else ("new", "old"):
                tree, port = trees[name]
                runs[name].append(_round(tree, port, i, a.e2e_seconds))
                print(name, i, json.dumps({k: round(v, 3) for k, v in runs[name][-1].items()}), flush=True)
    finally:
        for proc in nodes.values():
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in nodes.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
    med = {name: {k: statistics.median(r[k] for r in rs) for k in METRICS} for name, rs in runs.items()}
    for k in METRICS:
        old, new = med["old"][k], med["new"][k]
        ratio = new / old if k in ("w1", "w2") else old / new  # > 1: the new tree is better
        print(f"{k:6} old {old:14,.3f}  new {new:14,.3f}  new vs old {ratio:.3f} (> 1 is better)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
