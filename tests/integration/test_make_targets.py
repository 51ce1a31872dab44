"""`make run` installs only what running needs; `make test` adds the test extras (a dry
run of each on a virtualenv that does not exist yet: nothing is installed here)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.integration.conftest import REPO


def dry_run(target: str, venv: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS")}
    out = subprocess.run(
        ["make", "--no-print-directory", "-n", target, f"VENV={venv}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_make_run_installs_the_package_without_the_test_extras(tmp_path: Path) -> None:
    run = dry_run("run", tmp_path / "venv")
    assert "pip install -q -e .\n" in run
    assert "[test]" not in run
    assert run.rstrip().endswith("sluice serve")
    test = dry_run("test", tmp_path / "venv")
    assert "pip install -q -e '.[test]'" in test
