"""`make run` starts a node on the embedded defaults; the CLI works with no flags but the topic."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from ipc.client import Admin
from tests.integration.conftest import REPO, wait_until

DEFAULT_PORT = 6100


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.mark.slow
def test_make_run_serves_defaults_and_cli_needs_only_the_topic(tmp_path: Path) -> None:
    assert _port_free(DEFAULT_PORT), f"port {DEFAULT_PORT} is busy: stop the other node first"
    env = {k: v for k, v in os.environ.items() if k not in ("SLUICE_BOOTSTRAP", "MAKEFLAGS", "MFLAGS")}
    env.update(HOME=str(tmp_path), XDG_DATA_HOME=str(tmp_path / "data"))
    log = open(tmp_path / "make-run.log", "wb")  # noqa: SIM115 - closed in finally
    node = subprocess.Popen(
        ["make", "--no-print-directory", "run"],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    consumer: subprocess.Popen[bytes] | None = None
    sluice = str(REPO / ".venv" / "bin" / "sluice")
    try:

        def answering() -> bool:
            assert node.poll() is None, (tmp_path / "make-run.log").read_text()
            with Admin(timeout_ms=500) as admin:
                admin.list_topics()
            return True

        wait_until(answering, 60, "make run to serve on the default endpoint")
        assert (tmp_path / "data" / "sluice").is_dir(), "data dir not under the user's data home"

        created = subprocess.run(  # topics are not created on first use (auto_create_topics = false)
            [sluice, "topics", "create", "greetings"], env=env, timeout=30, capture_output=True
        )
        assert created.returncode == 0, created.stderr
        first = subprocess.run(
            [sluice, "produce", "greetings"], input=b"hello\n", env=env, timeout=30, capture_output=True
        )
        assert first.returncode == 0, first.stderr
        consumer = subprocess.Popen(
            [sluice, "consume", "greetings"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert consumer.stdout is not None
        fd = consumer.stdout.fileno()
        seen = b""
        deadline = time.monotonic() + 30
        n = 0
        # The consumer starts at the latest offset, so records produced before it has
        # positioned itself are not printed: produce again until one is, waiting on the
        # consumer's output (not a fixed delay) between attempts.
        while b"world" not in seen and time.monotonic() < deadline:
            n += 1
            out = subprocess.run([sluice, "produce", "greetings"], input=b"world\n", env=env, timeout=30)
            assert out.returncode == 0
            attempt_end = time.monotonic() + 1.0
            while b"world" not in seen and (left := attempt_end - time.monotonic()) > 0:
                ready, _, _ = select.select([fd], [], [], left)
                if not ready:
                    break
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                seen += chunk
        assert b"world" in seen, f"consumer printed {seen!r} after {n} produce runs"
    finally:
        if consumer is not None:
            consumer.kill()
            consumer.wait(10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(node.pid, signal.SIGTERM)
        try:
            node.wait(20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.pid, signal.SIGKILL)
            node.wait(10)
        log.close()
