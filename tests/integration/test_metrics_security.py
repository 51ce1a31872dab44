"""The metrics endpoint secured: a real node serving /metrics over TLS with basic auth.

The certificate is self-signed, made by the ``openssl`` command line in the test's
temporary directory (for 127.0.0.1, so clients verify it with it as their CA). The node
(``sluice serve``), Debian's ``prometheus`` and every other process run in their own
sessions and are SIGKILLed in teardown whatever happened (fixtures of test_metrics.py
and conftest.py); waiting is polling with a deadline.
"""

from __future__ import annotations

import base64
import http.client
import os
import shutil
import socket
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ipc.client import Producer
from metrics.password import MIN_ITERATIONS, hash_password
from tests.integration import test_metrics
from tests.integration.conftest import REPO, SLUICE, Node, free_port, wait_until
from tests.integration.test_metrics import NODE_OPTIONS, Proc, Prometheus

procs = test_metrics.procs  # the fixture: load processes and prometheus, SIGKILLed in teardown

pytestmark = pytest.mark.slow

USER, PASSWORD = "prometheus", "correct horse battery staple"


def make_cert(base: Path) -> tuple[Path, Path]:
    """A self-signed certificate (and its key) for 127.0.0.1 and localhost."""
    cert, key = base / "metrics-cert.pem", base / "metrics-key.pem"
    subprocess.run(
        [
            _tool_openssl(),
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=sluice-metrics-test",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return cert, key


def _tool_openssl() -> str:
    path = shutil.which("openssl")
    if path is None:
        pytest.skip("openssl command not found")
    return path


def get(url: str, ca: Path | None, auth: tuple[str, str] | None) -> tuple[int, dict[str, str], str]:
    req = urllib.request.Request(url)
    if auth is not None:
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
    ctx = ssl.create_default_context(cafile=str(ca)) if ca is not None else None
    try:
        with urllib.request.urlopen(req, timeout=10, context=ctx) as resp:
            return int(resp.status), dict(resp.headers), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), dict(exc.headers), exc.read().decode()


def secured_node(node_factory: Callable[..., Node], tmp_path: Path) -> tuple[Node, str, Path]:
    cert, key = make_cert(tmp_path)
    addr = f"127.0.0.1:{free_port()}"
    node = node_factory(
        metrics_listen=addr,
        metrics_tls_cert_file=str(cert),
        metrics_tls_key_file=str(key),
        metrics_basic_auth_users={USER: hash_password(PASSWORD, MIN_ITERATIONS)},
        **NODE_OPTIONS,
    ).start()
    return node, addr, cert


def test_tls_and_basic_auth_with_a_real_prometheus(
    node_factory: Callable[..., Node], tmp_path: Path, procs: Callable[..., Proc]
) -> None:
    """Over https with the right credentials /metrics answers (no pid label anywhere, the
    workers' histograms included); a wrong password, no credentials and another scheme get
    401 on every path; plain http to the port fails and leaves it serving; a client that
    never starts its handshake does not hold up others; a real Prometheus with basic_auth
    and tls_config scrapes it (up == 1), one with a wrong password does not (up == 0)."""
    node, addr, cert = secured_node(node_factory, tmp_path)
    url = f"https://{addr}"
    with node.admin() as admin:
        admin.create_topic("sec", 2)
    with Producer(node.bootstrap) as p:
        for i in range(20):
            p.send("sec", b"x", partition=i % 2)
        p.flush(30)

    def scraped() -> str | None:
        code, _, text = get(url + "/metrics", cert, (USER, PASSWORD))
        assert code == 200, (code, text)
        # the workers' own files (histograms) and their process series are there
        ok = "sluice_produce_request_duration_seconds_count" in text and "sluice_worker_resident_memory_bytes{" in text
        return text if ok else None

    text = wait_until(scraped, 20, "histograms and worker series in /metrics")
    labelled = {s.name for fam in text_string_to_metric_families(text) for s in fam.samples if "pid" in s.labels}
    assert not labelled and "pid=" not in text, labelled
    code, _, body = get(url + "/healthz", cert, (USER, PASSWORD))
    assert (code, body) == (200, "ok\n")

    for auth in ((USER, "wrong"), ("nobody", PASSWORD), None):
        for path in ("/metrics", "/healthz", "/"):
            code, headers, _ = get(url + path, cert, auth)
            assert code == 401, (auth, path, code)
            assert headers.get("WWW-Authenticate", "").startswith("Basic "), headers
    req = urllib.request.Request(url + "/metrics", headers={"Authorization": "Bearer " + PASSWORD})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10, context=ssl.create_default_context(cafile=str(cert)))
    assert err.value.code == 401

    # plain http to the TLS port: no answer; a client that does not trust the certificate: refused
    with pytest.raises((OSError, http.client.HTTPException)):
        urllib.request.urlopen(f"http://{addr}/metrics", timeout=10)
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        urllib.request.urlopen(url + "/metrics", timeout=10)

    # a connection that never sends its ClientHello holds one thread, not the endpoint
    host, _, port = addr.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=10):
        code, _, _ = get(url + "/healthz", cert, (USER, PASSWORD))
        assert code == 200

    prom_base = tmp_path / "prom"
    prom_base.mkdir()
    (prom_base / "password").write_text(PASSWORD)

    def job(name: str, password_file: Path) -> dict[str, object]:
        return {
            "job_name": name,
            "scheme": "https",
            "basic_auth": {"username": USER, "password_file": str(password_file)},
            "tls_config": {"ca_file": str(cert)},
            "static_configs": [{"targets": [addr]}],
        }

    (prom_base / "wrong").write_text("wrong")
    prom = Prometheus(
        prom_base,
        addr,
        procs,
        scrape_configs=[job("sluice", prom_base / "password"), job("sluice-wrong", prom_base / "wrong")],
    )
    prom.wait_scraping()
    assert prom.value('sluice_node_healthy{job="sluice"}') == 1
    prom.wait_value('count(up{job="sluice-wrong"} == 0)', lambda v: v == 1, "the scrape with a wrong password failing")
    targets = prom.api("targets")["activeTargets"]
    wrong = [t for t in targets if t["labels"]["job"] == "sluice-wrong"]
    assert wrong and "401" in wrong[0]["lastError"], wrong
    assert prom.query('{__name__=~"sluice_.+", pid!=""}') == []


def test_bad_tls_file_is_refused_at_start(tmp_path: Path) -> None:
    """``sluice serve`` with a missing key file exits 1 at once with a line naming the option."""
    cert, _ = make_cert(tmp_path)
    node = Node(
        tmp_path,
        metrics_listen=f"127.0.0.1:{free_port()}",
        metrics_tls_cert_file=str(cert),
        metrics_tls_key_file=str(tmp_path / "missing-key.pem"),
    )
    out = subprocess.run(
        [*SLUICE, "serve", "--config", str(node.config_path)],
        capture_output=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        start_new_session=True,
        check=False,
    )
    assert out.returncode == 1, out
    assert "metrics_tls_key_file=" in out.stderr.decode() and "cannot read" in out.stderr.decode(), out.stderr
