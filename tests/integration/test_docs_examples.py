"""The shell examples of docs/*.md run as written (issue 19; the README's have their own
test, test_readme_examples.py).

Every ```sh / ```console block of every page is either run or skipped for a reason the
page shows: an HTML comment right above the block, ``<!-- example: KIND -->``, where
KIND is one of ``SKIP_KINDS`` (a cluster, the host's systemd, the test suite itself,
...). The test prints what it skipped and why; an unknown KIND fails it, as does a
block with no mark that does not run.

Each page with blocks to run gets a fresh node of its own (``sluice serve`` with the
Kafka listener on), in a scratch working directory that holds the input files the
examples name (``app.log``). The examples' addresses and paths are rewritten to the
node's (``127.0.0.1:6100``, ``127.0.0.1:9092``, ``127.0.0.1:9464``, ``/srv/sluice``),
and ``$SLUICE_BOOTSTRAP`` / ``$XDG_DATA_HOME`` make the commands that name no node find
it, as the defaults would. Each command runs in ``bash -o pipefail`` (a failing
``sluice`` before a ``| jq`` fails the line) with a bounded time. A command whose
comment says ``Ctrl-C`` runs until it has printed its first line, then gets SIGINT
and must end as documented (exit 130, or 0 for kcat).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.conftest import REPO, free_port, wait_until

pytestmark = pytest.mark.slow

DOCS = sorted((REPO / "docs").glob("*.md"))
SKIP_KINDS = {
    "serve": "starts nodes of its own, which run until stopped",
    "cluster": "needs several nodes and ZooKeeper (tests/cluster covers these commands)",
    "host": "installs on the host or drives its systemd and journal (root, /etc, make install)",
    "suite": "runs the test suite itself",
    "secured": "needs TLS certificates, SASL credentials and a password typed at a terminal "
    "(tests/integration/test_kafka_security.py covers them)",
}
MARK = re.compile(r"<!--\s*example:\s*([\w-]+)\s*-->")
BLOCK = re.compile(r"^```(sh|console)\n(.*?)^```", re.S | re.M)
COMMAND_TIMEOUT_S = 60
FOLLOW_OUTPUT_S = 30  # a Ctrl-C example must print its first line within this


@dataclass
class Block:
    doc: str
    line: int  # of the opening fence
    commands: list[str]
    skip: str | None  # the mark's KIND


def blocks(path: Path) -> list[Block]:
    text = path.read_text()
    out = []
    for m in BLOCK.finditer(text):
        before = text[: m.start()].rstrip().splitlines()
        mark = MARK.fullmatch(before[-1].strip()) if before else None
        body = m.group(2)
        if m.group(1) == "console":  # only the prompt lines are commands
            body = "\n".join(ln[2:] for ln in body.splitlines() if ln.startswith("$ "))
        out.append(
            Block(
                f"docs/{path.name}", text[: m.start()].count("\n") + 1, commands(body), mark.group(1) if mark else None
            )
        )
    return out


def commands(body: str) -> list[str]:
    """The block's commands: continuation lines joined, comment-only and blank lines dropped."""
    out: list[str] = []
    pending = ""
    for raw in body.splitlines():
        line = pending + raw
        if line.rstrip().endswith("\\"):
            pending = line.rstrip()[:-1] + " "
            continue
        pending = ""
        if line.strip() and not line.lstrip().startswith("#"):
            out.append(line.strip())
    return out


ALL = [b for d in DOCS for b in blocks(d)]


def test_every_block_runs_or_is_marked_with_a_known_reason() -> None:
    unknown = [f"{b.doc}:{b.line}: {b.skip!r}" for b in ALL if b.skip is not None and b.skip not in SKIP_KINDS]
    assert not unknown, f"unknown example marks (known: {sorted(SKIP_KINDS)}): {unknown}"
    run = [b for b in ALL if b.skip is None]
    assert sum(len(b.commands) for b in run) >= 40, "the docs' single-node examples"
    print("skipped docs examples:")
    for b in ALL:
        if b.skip is not None:
            print(f"  {b.doc}:{b.line} ({len(b.commands)} command(s)): {SKIP_KINDS[b.skip]}")


class Scratch:
    """A node of its own for one page, the environment and directory its examples run in."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.work = base / "work"
        self.work.mkdir()
        (self.work / "app.log").write_text(
            "".join(f"2026-11-25 10:00:{i:02d} INFO request {i} served\n" for i in range(50))
        )
        self.port, self.mport, self.kport = free_port(), free_port(), free_port()
        self.data_dir = base / "share" / "sluice"  # the default data directory under $XDG_DATA_HOME
        self.env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS")}
        bin_dir = REPO / ".venv" / "bin" if (REPO / ".venv" / "bin" / "sluice").exists() else Path(sys.prefix) / "bin"
        self.env.update(
            HOME=str(base),
            XDG_DATA_HOME=str(base / "share"),
            SLUICE_BOOTSTRAP=f"tcp://127.0.0.1:{self.port}",
            PYTHONPATH=str(REPO),
            PATH=f"{bin_dir}:{self.env.get('PATH', '/usr/bin:/bin')}",
        )
        config = base / "node.toml"
        config.write_text(
            f'listen = "tcp://127.0.0.1:{self.port}"\nmetrics_listen = "127.0.0.1:{self.mport}"\n'
            f'kafka_listen = "127.0.0.1:{self.kport}"\noffsets_topic_partitions = 1\n'
        )
        self.log = open(base / "node.log", "wb")  # noqa: SIM115 - closed in stop()
        self.node = subprocess.Popen(
            [sys.executable, "-m", "appliance.cli", "serve", "--config", str(config)],
            cwd=base,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def wait_ready(self) -> None:
        def answering() -> bool:
            assert self.node.poll() is None, (self.base / "node.log").read_text()
            st = subprocess.run(
                [sys.executable, "-m", "appliance.cli", "topics", "list"], env=self.env, capture_output=True, timeout=30
            )
            return st.returncode == 0

        wait_until(answering, 60, "the node to answer")
        from tests.integration.test_kafka_listener import _api_versions

        wait_until(lambda: _api_versions(f"127.0.0.1:{self.kport}") is not None, 30, "the Kafka listener")

    def localize(self, cmd: str) -> str:
        return (
            cmd.replace("127.0.0.1:6100", f"127.0.0.1:{self.port}")
            .replace("127.0.0.1:9092", f"127.0.0.1:{self.kport}")
            .replace("127.0.0.1:9464", f"127.0.0.1:{self.mport}")
            .replace("/srv/sluice", str(self.data_dir))
        )

    def run(self, block: Block, cmd: str) -> None:
        argv = ["bash", "-o", "pipefail", "-c", self.localize(cmd)]
        where = f"{block.doc}:{block.line}: {cmd}"
        if "Ctrl-C" in cmd:
            self._interrupted(argv, where)
            return
        try:
            out = subprocess.run(
                argv, cwd=self.work, env=self.env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"{where}\nstill running after {COMMAND_TIMEOUT_S} s (add --timeout-ms, or say Ctrl-C)")
        assert out.returncode == 0, f"{where}\nexit {out.returncode}\n{out.stdout[-2000:]}{out.stderr[-2000:]}"

    def _interrupted(self, argv: list[str], where: str) -> None:
        """Run until the first line of output, then Ctrl-C (SIGINT to its process group)."""
        outfile = self.work / ".follow.out"
        with open(outfile, "wb") as out:
            proc = subprocess.Popen(
                argv, cwd=self.work, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:

            def printed() -> bool:
                assert proc.poll() is None, f"{where}: ended ({proc.returncode}) before Ctrl-C:\n{outfile.read_text()}"
                return outfile.stat().st_size > 0

            wait_until(printed, FOLLOW_OUTPUT_S, f"{where}: its first line")
            os.killpg(proc.pid, signal.SIGINT)
            code = proc.wait(COMMAND_TIMEOUT_S)
            assert code in (0, 130), f"{where}: exit {code} after Ctrl-C:\n{outfile.read_text()[-2000:]}"
        finally:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)

    def stop(self) -> None:
        if self.node.poll() is None:
            self.node.send_signal(signal.SIGTERM)
            try:
                self.node.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.node.pid, signal.SIGKILL)
                self.node.wait(10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.node.pid, signal.SIGKILL)  # anything an example left behind
        self.log.close()


RUN_DOCS = sorted({b.doc for b in ALL if b.skip is None})


@pytest.mark.parametrize("doc", RUN_DOCS)
def test_docs_examples_run(doc: str, tmp_path: Path) -> None:
    if shutil.which("jq") is None or shutil.which("kcat") is None:
        pytest.fail("the docs' examples use jq and kcat (.ci/system-deps installs them)")
    scratch = Scratch(tmp_path)
    started = time.monotonic()
    try:
        scratch.wait_ready()
        ran = 0
        for block in (b for b in ALL if b.doc == doc and b.skip is None):
            for cmd in block.commands:
                scratch.run(block, cmd)
                ran += 1
        assert ran > 0
        print(f"{doc}: {ran} command(s) in {time.monotonic() - started:.1f} s")
    finally:
        scratch.stop()
        print(f"--- node log tail ---\n{(tmp_path / 'node.log').read_text(errors='replace')[-3000:]}")
