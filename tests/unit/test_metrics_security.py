"""The metrics endpoint's security settings as pure logic: password hashes, the basic
auth check, pid labels summed away, and the options refused at load with their name.
(The endpoint itself, over https with a real Prometheus: tests/integration/test_metrics_security.py.)"""

from __future__ import annotations

import base64
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from appliance.config import load_config
from ipc.errors import InvalidConfigError
from metrics.exporter import WithoutPid
from metrics.password import MIN_ITERATIONS, BadPasswordHash, BasicAuth, check_password, hash_password, parse_hash

REPO = Path(__file__).resolve().parents[2]
FAST = MIN_ITERATIONS  # the fewest iterations a hash may have; enough for tests


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_hash_round_trip_and_salt() -> None:
    h = hash_password("s3cret", FAST)
    assert h.startswith(f"pbkdf2_sha256${FAST}$")
    assert check_password("s3cret", h) and not check_password("s3cret ", h)
    assert hash_password("s3cret", FAST) != h  # a fresh salt each time


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "sha256:abcd",
        "pbkdf2_sha256$1000$c2FsdHNhbHQ=$" + "A" * 44,
        "pbkdf2_sha256$x$a$b",
        "pbkdf2_sha256$600000$!!$b",
    ],
)
def test_malformed_hashes_are_refused(bad: str) -> None:
    with pytest.raises(BadPasswordHash):
        parse_hash(bad)


def test_basic_auth_accepts_only_the_right_password() -> None:
    auth = BasicAuth({"prometheus": hash_password("right", FAST)})
    assert auth.check(basic("prometheus", "right")) == "prometheus"
    assert auth.check(basic("prometheus", "right")) == "prometheus"  # the cached path
    assert auth.check(basic("prometheus", "wrong")) is None
    assert auth.check(basic("nobody", "right")) is None
    assert auth.check(None) is None
    assert auth.check("Bearer abc") is None
    assert auth.check("Basic !!!not-base64") is None
    assert auth.check("Basic " + base64.b64encode(b"no-colon").decode()) is None


class _Fake(Collector):
    def collect(self) -> Iterator[Metric]:
        g = GaugeMetricFamily("g", "a gauge in 'all' mode", labels=["topic", "pid"])
        g.add_metric(["t", "101"], 2.0)
        g.add_metric(["t", "102"], 3.0)
        g.add_metric(["u", "101"], 5.0)
        yield g
        h = GaugeMetricFamily("plain", "no pid", labels=["topic"])
        h.add_metric(["t"], 7.0)
        yield h


def test_pid_labels_are_summed_away() -> None:
    got = {(s.name, tuple(sorted(s.labels.items()))): s.value for m in WithoutPid(_Fake()).collect() for s in m.samples}
    assert got == {("g", (("topic", "t"),)): 5.0, ("g", (("topic", "u"),)): 5.0, ("plain", (("topic", "t"),)): 7.0}


def _config(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "node.toml"
    p.write_text(f'data_dir = "{tmp_path / "data"}"\n' + text)
    return p


def test_bad_hash_in_config_names_the_option(tmp_path: Path) -> None:
    with pytest.raises(InvalidConfigError, match=r"metrics_basic_auth_users: user 'prometheus': bad password hash"):
        load_config(str(_config(tmp_path, '[metrics_basic_auth_users]\nprometheus = "plain-password"\n')))
    with pytest.raises(InvalidConfigError, match="metrics_basic_auth_users: expected a table"):
        load_config(str(_config(tmp_path, 'metrics_basic_auth_users = "x"\n')))
    h = hash_password("pw", FAST)
    cfg = load_config(str(_config(tmp_path, f'[metrics_basic_auth_users]\nprometheus = "{h}"\n')))
    assert cfg.metrics_basic_auth_users == {"prometheus": h}


def test_tls_files_are_checked_at_load(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(InvalidConfigError, match="set both"):
        load_config(str(_config(tmp_path, f'metrics_tls_cert_file = "{missing}"\n')))
    text = f'metrics_tls_cert_file = "{missing}"\nmetrics_tls_key_file = "{missing}"\n'
    with pytest.raises(InvalidConfigError, match=r"metrics_tls_cert_file='.*nope.pem': cannot read"):
        load_config(str(_config(tmp_path, text)))
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    text = f'metrics_tls_cert_file = "{junk}"\nmetrics_tls_key_file = "{junk}"\n'
    with pytest.raises(InvalidConfigError, match="not a PEM certificate and its matching private key"):
        load_config(str(_config(tmp_path, text)))


def test_the_hash_tool_reads_stdin() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "metrics.password", "--iterations", str(FAST)],
        input=b"from-stdin\n",
        capture_output=True,
        cwd=REPO,
        timeout=30,
        check=True,
    )
    assert check_password("from-stdin", out.stdout.decode().strip())
