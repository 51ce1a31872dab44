"""/metrics of a real node (issue 19): process_* per role with no pid label, the build
it runs, and request errors by API and error code; a worker restart keeps the workers'
CPU a counter. Unit-level checks of the collectors are in tests/unit/test_metrics_processes.py."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Callable

from ipc.client import Admin
from ipc.errors import SluiceError
from metrics.build import commit
from tests.integration.conftest import REPO, Node, wait_until
from tests.integration.test_metrics import fetch, metrics_node, sample, scrape


def test_process_series_build_info_and_request_errors(node_factory: Callable[..., Node]) -> None:
    node = metrics_node(node_factory)
    with node.admin() as admin:
        admin.create_topic("t", 2)
    node.wait_serving("t", 0)
    node.wait_serving("t", 1)
    workers = len(node.status()["partitions"])

    # an error answered by the front endpoint: a topic that does not exist
    with Admin(node.bootstrap, timeout_ms=5000) as admin:
        try:
            admin.delete_topic("nosuch")
        except SluiceError as exc:
            code = exc.code
        else:
            raise AssertionError("deleting a missing topic succeeded")

    def settled() -> dict[tuple[str, frozenset[tuple[str, str]]], float] | None:
        m = scrape(node)
        ok = m.get(("sluice_processes", frozenset({("role", "worker")}))) == workers
        return m if ok else None

    m = wait_until(settled, 20, f"{workers} workers counted in sluice_processes")
    for role, n in (("supervisor", 1), ("fork_server", 1), ("resource_tracker", 1), ("worker", workers)):
        assert sample(m, "sluice_processes", role=role) == n, role
        assert sample(m, "process_cpu_seconds_total", role=role) >= 0
        assert sample(m, "process_resident_memory_bytes", role=role) > 0
        assert sample(m, "process_open_fds", role=role) > 0
    assert sample(m, "process_start_time_seconds", role="supervisor") > 0
    assert sample(m, "sluice_build_info", version="0.1.0", commit=commit(source=str(REPO))) == 1
    errors = {dict(labels)["api"]: v for (name, labels), v in m.items() if name == "sluice_request_errors_total"}
    assert errors.get("delete_topic", 0) >= 1, (code, errors)
    assert sample(m, "sluice_request_errors_total", api="delete_topic", error=code) >= 1
    _, text = fetch(node)
    assert "pid=" not in text

    # a worker SIGKILLed: the workers' CPU counter does not step back
    before = sample(m, "process_cpu_seconds_total", role="worker")
    pid = node.worker_pid("t", 0)
    os.kill(pid, signal.SIGKILL)
    node.wait_serving("t", 0, not_pid=pid)
    after = wait_until(
        lambda: scrape(node).get(("process_cpu_seconds_total", frozenset({("role", "worker")}))), 10, "worker CPU"
    )
    assert after >= before

    promtool = shutil.which("promtool")
    if promtool:
        out = subprocess.run([promtool, "check", "metrics"], input=fetch(node)[1].encode(), capture_output=True)
        assert out.returncode == 0 and not out.stdout.strip() and not out.stderr.strip(), out
