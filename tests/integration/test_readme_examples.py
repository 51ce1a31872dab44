"""The README's examples run as written (issue 19): every line of its shell blocks and its
Python snippet (twice: it must not fail on a second run), against a real node.

The node listens on free ports rather than the defaults (another node may hold 6100 or
9464 on a shared host): the examples' ``127.0.0.1:6100`` and ``127.0.0.1:9464`` are
rewritten to them, and ``$SLUICE_BOOTSTRAP`` / ``$XDG_DATA_HOME`` make the commands that
take no address find the node as the defaults would. ``make run`` / ``make test`` are run
as dry runs (``make -n``): the suite cannot start itself."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from tests.integration.conftest import REPO, free_port, wait_until

README = (REPO / "README.md").read_text()


def blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", README, flags=re.S | re.M)


def shell_lines(block: str) -> list[str]:
    return [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_readme_has_the_examples_this_test_runs() -> None:
    assert len(blocks("sh")) >= 2 and len(blocks("python")) >= 1


def test_readme_examples_run(tmp_path: Path) -> None:
    port, mport = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS")}
    env.update(
        HOME=str(tmp_path),
        XDG_DATA_HOME=str(tmp_path / "share"),
        SLUICE_BOOTSTRAP=f"tcp://127.0.0.1:{port}",
        PYTHONPATH=str(REPO),
    )

    def localize(text: str) -> str:
        return text.replace("127.0.0.1:6100", f"127.0.0.1:{port}").replace("127.0.0.1:9464", f"127.0.0.1:{mport}")

    sh = blocks("sh")
    make_lines = [line for b in sh for line in shell_lines(b) if line.startswith("make ")]
    assert make_lines, "the README's make commands"
    for line in make_lines:
        target = line.split()[1]
        out = subprocess.run(["make", "-n", target], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, f"{line}: {out.stderr}"

    log = open(tmp_path / "node.log", "wb")  # noqa: SIM115 - closed in finally
    node = subprocess.Popen(
        [sys.executable, "-m", "appliance.cli", "serve", "--listen", f"tcp://127.0.0.1:{port}"]
        + ["--metrics-listen", f"127.0.0.1:{mport}"],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:

        def answering() -> bool:
            assert node.poll() is None, (tmp_path / "node.log").read_text()
            st = subprocess.run(
                [sys.executable, "-m", "appliance.cli", "topics", "list"], env=env, capture_output=True, timeout=30
            )
            return st.returncode == 0

        wait_until(answering, 60, "the node to answer")
        # the README's `. .venv/bin/activate`: this checkout's virtualenv, or (a checkout
        # without one, such as a worktree) the one running these tests
        venv = REPO / ".venv" if (REPO / ".venv" / "bin" / "activate").exists() else Path(sys.prefix)
        ran = 0
        for block in sh:
            lines = shell_lines(block)
            if any(line.startswith("make ") for line in lines):
                continue
            for line in lines:
                cmd = localize(line)
                if cmd.startswith(". "):  # the activation: kept as a prefix of every command
                    continue
                activate = f". {venv}/bin/activate && " if any(x.startswith(". ") for x in lines) else ""
                out = subprocess.run(
                    ["bash", "-c", f"cd {REPO} && {activate}{cmd}"], env=env, capture_output=True, text=True, timeout=60
                )
                assert out.returncode == 0, f"README line failed ({out.returncode}): {line}\n{out.stdout}{out.stderr}"
                ran += 1
        assert ran >= 5
        for attempt in (1, 2):  # twice: the snippet creates its topic with exist_ok
            code = localize(blocks("python")[0])
            out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
            assert out.returncode == 0, f"README Python snippet, run {attempt}:\n{out.stderr}"
            assert "b'value'" in out.stdout, out.stdout
    finally:
        if node.poll() is None:
            node.send_signal(signal.SIGTERM)
            try:
                node.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(node.pid, signal.SIGKILL)
                node.wait(10)
        log.close()
